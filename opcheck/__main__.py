"""`python -m opcheck --model DIR`: the same as `check_ops`."""

from .cli import check_ops_main

check_ops_main()
