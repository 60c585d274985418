"""One module per upstream family: partitions, raw assets, parsers."""
