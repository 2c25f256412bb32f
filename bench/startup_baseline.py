"""The start-up baseline of bench/startup.py: a minimal two-command typer app.

It pays what any typer CLI pays in this environment (interpreter, typer, click, rich on --help)
and nothing else, so `compact`'s own start-up cost is the ratio against it.
"""

import typer

app = typer.Typer(add_completion=False)


@app.command()
def hello(name: str) -> None:
    """Say hello."""
    typer.echo(f"hello {name}")


@app.command()
def bye(name: str) -> None:
    """Say goodbye."""
    typer.echo(f"bye {name}")


if __name__ == "__main__":
    app()
