"""`python -m minigpt4.serve ...`: the same as `minigpt4 serve ...`."""
import argparse
import sys

from minigpt4.serve.cli import add_serve_args, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m minigpt4.serve", description="serve MiniGPT-4")
    add_serve_args(parser)
    sys.exit(run(parser.parse_args()))
