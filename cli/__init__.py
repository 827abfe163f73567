"""The `normlab` command line: parse, load, dispatch, print. No experiment logic lives here."""
