"""siptrio-tui: the terminal monitor, its own process, a pure control-socket client."""
