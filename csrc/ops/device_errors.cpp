// The host end of asynchronous device errors (common/device_errors.h): the poller hook, the message of
// a recorded error (each family's own raiser, so the wording is the synchronous check's), and the op
// behind fastloss.check_errors().
#include "common/device_errors.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>

#include "common/errors.h"
#include "ops/ctc.h"
#include "ops/margin_rows.h"
#include "ops/pointwise.h"

namespace fastloss {
namespace {

std::atomic<DeviceErrorPoller> g_poller{nullptr};

[[noreturn]] void raise_kind(const DeviceErrorRecord& r) {
  const char* op = reinterpret_cast<const char*>(r.op);
  switch (static_cast<DeviceErrorKind>(r.kind)) {
    case DeviceErrorKind::ClassTarget: raise_target_out_of_bounds(op, r.value, r.p[0], r.p[1], r.pos);
    case DeviceErrorKind::MultiMargin: raise_multi_margin_target(op, r.value, r.p[0], r.pos);
    case DeviceErrorKind::Multilabel: raise_multilabel_target(op, r.value, r.p[0], r.p[1], r.p[2]);
    case DeviceErrorKind::BceDomain: raise_bce_domain(op, r.p[0] != 0, r.pos, r.fvalue);
    case DeviceErrorKind::CtcLabel: raise_ctc_label(r.value, r.p[2], r.pos - r.p[3], r.pos, r.p[0], r.p[1]);
  }
  TORCH_CHECK(false, "fastloss: a CUDA kernel recorded an error of unknown kind ", num(int64_t(r.kind)));
  __builtin_unreachable();
}

void check_errors(bool wait) { raise_device_errors(wait); }

}  // namespace

void set_device_error_poller(DeviceErrorPoller poller) { g_poller.store(poller, std::memory_order_release); }

void raise_device_errors(bool wait) {
  if (DeviceErrorPoller p = g_poller.load(std::memory_order_acquire)) p(wait);
}

void raise_recorded_error(const DeviceErrorRecord& r) {
  try {
    raise_kind(r);
  } catch (c10::Error& e) {  // keeps the raiser's type (IndexError, ...): add where it came from
    e.add_context(
        "(found on the GPU by the kernel of an earlier call and raised by the next fastloss CUDA call or "
        "fastloss.check_errors(); fastloss.set_target_validation('strict') raises it in the call itself)");
    throw;
  }
}

TORCH_LIBRARY_FRAGMENT(fastloss, m) {
  // Raises the first error a CUDA kernel recorded and no call has raised yet; wait: synchronize every
  // device that has recorded errors first. Wrapped by fastloss.check_errors().
  m.def("_check_errors(bool wait=True) -> ()", &check_errors);
}

}  // namespace fastloss
