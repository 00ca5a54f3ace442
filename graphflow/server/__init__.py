"""graphflow's HTTP server (`graphflow serve`): a queue other tools drive, live progress, a
history that survives restarts, and a small web page. ``app`` (assembles the app), ``routes``
(the HTTP API, one module per resource), ``auth`` (who may call), ``store`` (SQLite), ``worker``
(runs the queue on one executor), ``broker`` (live events), ``catalog`` (workflows), ``outputs``
(results as JSON), ``finish`` (a run's end, as clients hear it), ``main`` (the command). Importing
this package imports none of them, so the CLI's parser stays light."""
