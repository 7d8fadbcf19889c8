"""`python -m minigpt4 <verb>` = `minigpt4 <verb>`."""
import sys

from minigpt4.cli import main

sys.exit(main())
