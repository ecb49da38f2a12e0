"""protocaffe's version, in one place (pyproject.toml reads it from here), and the Caffe
release whose files and pycaffe API it follows (pycaffe's ``caffe.__version__``)."""
VERSION = "0.1.0"
CAFFE_VERSION = "1.0.0"
