"""Data input: Caffe's data layers and dataset tools.

- ``layers``: the Data, ImageData and MemoryData layer types;
- ``hdf5``: the HDF5Data and HDF5Output layer types (h5py); ``window``: WindowData (R-CNN);
- ``db``: LMDB databases of Datum records; ``images``: list files and image files;
- ``transform``: Caffe's DataTransformer (random draws, float32 arithmetic);
- ``pipeline``: one layer's recipe for batch k; ``prefetch``: worker processes;
- ``convert_imageset``, ``compute_image_mean``, ``pca``: the command-line tools.
"""
