"""A user's audio -> a seed loop: sniffed decoding, tempo and beats, a whole number of beats stretched to 5.12 s."""
