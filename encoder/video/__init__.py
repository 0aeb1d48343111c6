"""Reading video: decoding files, images and frame arrays into fixed-size clips with bounded work
(``decode``), long videos read as consecutive windows of a few seconds in one forward pass, each window
a clip equal to ``load_clip`` on its span (``windows``), clip records and the listing of folders,
manifests and datasets (``clips``), training crops (``crops``) and decoding in worker processes so that
one bad file costs only itself (``workers``)."""
