"""The Gradio app (``prism-vlm app``): the page (``video_chat``), its one shared model service over
``vlm`` inference and serving (``service``, ``batching``, ``compute_thread``), what it accepts (``limits``,
``request_guard``, ``uploads``), search and zero-shot labels (``search``) and its command (``cli``)."""
