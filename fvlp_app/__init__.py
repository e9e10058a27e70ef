"""The draw-and-retrieve app: a query API over a gallery index and the drawing page it serves."""
