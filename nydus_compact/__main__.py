"""`python -m nydus_compact` runs the `compact` command."""

from nydus_compact.cli.main import run

if __name__ == "__main__":
    run()
