"""Generated protobuf bindings for Caffe's schema (``proto/caffe.proto``).

``from protocaffe.proto import caffe_pb2`` is the equivalent of pycaffe's
``from caffe.proto import caffe_pb2``. Regenerate with::

    python -m grpc_tools.protoc -Iproto --python_out=protocaffe/proto proto/caffe.proto
"""
