"""Reference data lists from the behaviour specification (spec/data.json), shipped with the package."""
