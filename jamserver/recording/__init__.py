"""Recording a jam: the recorder client, recording files and the in-process renderer."""
