"""Caffe's subcommands: train, test, time, device_query."""
