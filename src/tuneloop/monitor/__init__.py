"""`tuneloop monitor`: logged traffic (tuneloop.traffic) watched and turned into the next data set.

export.py   `monitor export`: corrected traffic → training records for `data prepare`; thumbs-down → review
"""
