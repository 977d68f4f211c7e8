"""`python -m tvm_patch` is the same as the `tvm-patch` console script."""

from tvm_patch.cli import main

raise SystemExit(main())
