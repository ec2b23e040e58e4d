"""`python demo/app.py [key=value ...]`: the Gradio demo, the same as `mmvsd demo` (see mmvsd/demo.py)."""

import sys

from mmvsd.demo import run

if __name__ == "__main__":
    sys.exit(run())
