"""`python -m minigpt4.pretrain RECIPE --minutes 20` (same as `minigpt4 pretrain-vision`)."""
import sys

from minigpt4.pretrain.cli import main

sys.exit(main())
