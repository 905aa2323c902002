"""`python -m hgltr_cli` runs the CLI (also what torchrun launches)."""
from hgltr_cli.cli import main

if __name__ == "__main__":
    main()
