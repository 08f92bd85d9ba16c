"""Data: the Hub dataset schema, COCO conversion and training transforms."""
