"""`python -m onnxprune` runs the CLI."""

from onnxprune.cli import main

if __name__ == "__main__":
    main()
