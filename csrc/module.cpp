// The extension module. Importing fastloss._C runs the static TORCH_LIBRARY registrations of every op
// (csrc/ops), CPU kernel (csrc/cpu) and CUDA kernel (csrc/cuda) linked into it.
//
// It also exports the eager fast path of fastloss.functional: `_fast_call(handle, *args)` calls an op
// through the C++ dispatcher exactly as torch.ops.fastloss.<op>(*args) does (same dispatch keys, so
// autograd, autocast, dispatch modes, fake tensors and the profiler see the same call), minus the
// ~10 us torch.ops spends matching Python arguments to the schema -- as much as a small loss's
// whole kernel. It accepts only the argument types of fastloss's forward schemas, given positionally,
// exactly typed; anything else (a tensor subclass, a numpy scalar, a missing argument) goes to the
// handle's fallback, torch.ops.fastloss.<op> itself, which handles (or rejects) it as before.
// (Under torch.compile, fastloss/_registrations/_common.py substitutes the fallback for the whole call.)
#include <Python.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include <deque>
#include <optional>
#include <string>
#include <vector>

namespace {

enum class ArgKind { Tensor, OptTensor, Int, Float, Bool, BoolList, OptIntOrDtype };

struct FastOp {
  c10::OperatorHandle op;
  PyObject* fallback;  // strong reference, kept for the process (the registry is never emptied)
  std::vector<ArgKind> args;
  std::vector<std::optional<c10::IValue>> defaults;  // per argument: the schema's default, if any
  std::vector<size_t> list_len;                      // bool[N]: N
};

// Handles live for the process (ops are never deregistered while fastloss is loaded); a deque keeps
// references stable as handles are added.
std::deque<FastOp>& registry() {
  static std::deque<FastOp> r;
  return r;
}

ArgKind arg_kind(const c10::Argument& a, const std::string& op) {
  const c10::TypePtr& t = a.type();
  if (t->kind() == c10::TypeKind::TensorType) return ArgKind::Tensor;
  if (t->kind() == c10::TypeKind::IntType) return ArgKind::Int;
  if (t->kind() == c10::TypeKind::FloatType) return ArgKind::Float;
  if (t->kind() == c10::TypeKind::BoolType) return ArgKind::Bool;
  if (t->kind() == c10::TypeKind::ListType && t->containedType(0)->kind() == c10::TypeKind::BoolType)
    return ArgKind::BoolList;
  if (t->kind() == c10::TypeKind::OptionalType) {
    const c10::TypeKind in = t->containedType(0)->kind();
    if (in == c10::TypeKind::TensorType) return ArgKind::OptTensor;
    // ScalarType? is int? in a parsed schema (ScalarType's boxed form is its number)
    if (in == c10::TypeKind::IntType || in == c10::TypeKind::ScalarTypeType) return ArgKind::OptIntOrDtype;
  }
  TORCH_CHECK(false, "fastloss._C._fast_handle: ", op, " has an argument of type ", t->str(),
              " that the fast path does not convert");
}

// _fast_handle(name, fallback) -> int: looks the op up once and records how to convert its arguments.
PyObject* fast_handle(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 2 || !PyCallable_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "fastloss._C._fast_handle(name, fallback)");
    return nullptr;
  }
  const char* s = PyUnicode_AsUTF8(args[0]);
  if (!s) return nullptr;
  FastOp f{c10::Dispatcher::singleton().findSchemaOrThrow(s, ""), args[1], {}, {}, {}};
  const c10::FunctionSchema& schema = f.op.schema();
  for (const c10::Argument& a : schema.arguments()) {
    f.args.push_back(arg_kind(a, s));
    f.defaults.push_back(a.default_value());
    f.list_len.push_back(a.N() ? static_cast<size_t>(*a.N()) : 0);
  }
  for (const c10::Argument& r : schema.returns())
    TORCH_CHECK(r.type()->kind() == c10::TypeKind::TensorType, "fastloss._C._fast_handle: ", s,
                " returns a non-tensor");
  Py_INCREF(f.fallback);
  registry().push_back(std::move(f));
  return PyLong_FromSize_t(registry().size() - 1);
  END_HANDLE_TH_ERRORS
}

// One Python argument as the IValue the schema wants; false: not a form the fast path takes.
bool convert(PyObject* o, ArgKind k, size_t n, c10::IValue* out) {
  switch (k) {
    case ArgKind::OptTensor:
      if (o == Py_None) {
        *out = c10::IValue();
        return true;
      }
      [[fallthrough]];
    case ArgKind::Tensor:
      if (!THPVariable_CheckExact(o)) return false;  // subclasses: torch.ops handles __torch_function__
      *out = THPVariable_Unpack(o);
      return true;
    case ArgKind::Int: {
      if (!PyLong_CheckExact(o)) return false;  // exact: not bool (a subclass of int)
      int overflow = 0;
      const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
      if (overflow) return false;
      *out = static_cast<int64_t>(v);
      return true;
    }
    case ArgKind::Float:
      if (PyFloat_CheckExact(o)) {
        *out = PyFloat_AS_DOUBLE(o);
        return true;
      }
      return false;
    case ArgKind::Bool:
      if (!PyBool_Check(o)) return false;
      *out = o == Py_True;
      return true;
    case ArgKind::BoolList: {
      if (!PyList_CheckExact(o) && !PyTuple_CheckExact(o)) return false;
      const Py_ssize_t len = PySequence_Fast_GET_SIZE(o);
      if (n && static_cast<size_t>(len) != n) return false;
      c10::List<bool> l;
      l.reserve(static_cast<size_t>(len));
      PyObject** items = PySequence_Fast_ITEMS(o);
      for (Py_ssize_t i = 0; i < len; ++i) {
        if (!PyBool_Check(items[i])) return false;
        l.push_back(items[i] == Py_True);
      }
      *out = std::move(l);
      return true;
    }
    case ArgKind::OptIntOrDtype:
      if (o == Py_None) {
        *out = c10::IValue();
        return true;
      }
      if (THPDtype_Check(o)) {
        *out = static_cast<int64_t>(reinterpret_cast<THPDtype*>(o)->scalar_type);
        return true;
      }
      return convert(o, ArgKind::Int, 0, out);
  }
  return false;
}

// _fast_call(handle, *args): the op's result (one tensor, or a tuple).
PyObject* fast_call(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs < 1 || !PyLong_CheckExact(args[0])) {
    PyErr_SetString(PyExc_TypeError, "fastloss._C._fast_call(handle, *args)");
    return nullptr;
  }
  const size_t h = PyLong_AsSize_t(args[0]);
  if (h >= registry().size()) {
    PyErr_SetString(PyExc_ValueError, "fastloss._C._fast_call: unknown handle");
    return nullptr;
  }
  const FastOp& f = registry()[h];
  const size_t given = static_cast<size_t>(nargs - 1), total = f.args.size();
  const auto fallback = [&] { return PyObject_Vectorcall(f.fallback, args + 1, given, nullptr); };
  if (given > total) return fallback();
  torch::jit::Stack stack;
  stack.reserve(total);
  for (size_t i = 0; i < total; ++i) {
    if (i >= given) {  // trailing arguments: the schema's defaults
      if (!f.defaults[i]) return fallback();
      stack.push_back(*f.defaults[i]);
      continue;
    }
    c10::IValue v;
    if (!convert(args[i + 1], f.args[i], f.list_len[i], &v)) return fallback();
    stack.push_back(std::move(v));
  }
  {
    pybind11::gil_scoped_release no_gil;  // as torch.ops: a long CPU loss does not hold other threads
    f.op.callBoxed(stack);
  }
  if (stack.size() == 1) return THPVariable_Wrap(std::move(stack[0]).toTensor());
  PyObject* tuple = PyTuple_New(static_cast<Py_ssize_t>(stack.size()));
  if (!tuple) return nullptr;
  for (size_t i = 0; i < stack.size(); ++i) {
    PyObject* t = THPVariable_Wrap(std::move(stack[i]).toTensor());
    if (!t) {
      Py_DECREF(tuple);
      return nullptr;
    }
    PyTuple_SET_ITEM(tuple, static_cast<Py_ssize_t>(i), t);
  }
  return tuple;
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"_fast_handle", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(fast_handle)), METH_FASTCALL,
     "_fast_handle(name, fallback) -> int: an op's handle for _fast_call"},
    {"_fast_call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(fast_call)), METH_FASTCALL,
     "_fast_call(handle, *args): the op called through the dispatcher (or the handle's fallback)"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}
