"""Markdown tables as the reports print them."""


def number(value, digits=2):
    """``value`` with ``digits`` decimals, '-' for None."""
    return "-" if value is None else f"{value:.{digits}f}"


def table_head(*columns):
    """The header and rule lines of a table. A column named with a trailing ':' is right-aligned
    (numbers): ``table_head("route", "s:")`` -> ['| route | s |', '|---|---:|']."""
    names = [c[:-1] if c.endswith(":") else c for c in columns]
    rules = ["---:" if c.endswith(":") else "---" for c in columns]
    return [table_row(*names), "|" + "|".join(rules) + "|"]


def table_row(*cells):
    """'| a | b |'."""
    return "| " + " | ".join(str(c) for c in cells) + " |"
