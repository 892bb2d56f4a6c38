"""The platform around the library: settings, the database layer and the `gistnet` command."""
