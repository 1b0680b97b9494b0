"""``python -m preprocess.gemini``: the labeler's command line (``preprocess.labeling.cli``)."""

import sys

from preprocess.labeling.cli import command_line

if __name__ == "__main__":
    sys.exit(command_line())
