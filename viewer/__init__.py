"""`engine view`: a local, read-only web page to read runs' records and compare versions side by side."""
