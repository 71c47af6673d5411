"""One jam room: membership and dispatch, its clip-generation loop, fan-out to members, its MP3 stream."""
