"""Audio: spectrogram parameters, DSP, the image format, MP3, the clip joiner and audio files."""
