"""`python -m search ...` and `accelerate launch -m search index ...`."""

from .cli import main

if __name__ == "__main__":
    main()
