"""Long videos: a video read as consecutive windows of a few seconds (``reading``: each window through the
glue and the video-text model once, kept in the window cache, ``cache``), its timeline of captions with
times (``timeline``), the moments a text describes (``moments``) and questions answered from the windows
they concern with the times named (``questions``)."""

DEFAULT_WINDOW_S = 8.0  # seconds: long enough for a shot or an action, short enough to say when
