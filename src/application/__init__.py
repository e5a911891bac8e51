"""Use cases over the domain; the outside world only through `ports`."""
