"""`python -m ascend_convert SRC OUT ...`: the same as `ascendkit convert`."""

from .cli import convert_main

convert_main()
