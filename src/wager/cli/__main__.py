"""``python -m wager.cli``: the ``wager`` command."""

from wager.cli import app

app()
