"""The command line (`hydrant ...`), `hydrant dev`, `hydrant produce`, the demo generator and the
offline computation behind `hydrant compute`."""
