"""A procedural music generator: labelled 5.12 s loops (style, lead instrument, key, tempo) and their captions."""
