"""`python -m fastloss.bench` (see fastloss/bench/__init__.py)."""
from . import main

main()
