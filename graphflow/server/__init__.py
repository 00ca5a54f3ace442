"""graphflow's HTTP server (`graphflow serve`): a queue other tools drive, live progress, a
history that survives restarts, and a small web page. ``app`` (the routes), ``store`` (SQLite),
``worker`` (runs the queue on one executor), ``broker`` (live events), ``catalog`` (workflows),
``outputs`` (results as JSON), ``main`` (the command). Importing this package imports none of
them, so the CLI's parser stays light."""
