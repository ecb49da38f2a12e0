SAMPLES = {
    "Input": ('name: "l" type: "Input" top: "t0" input_param { shape { dim: 2 dim: 3 } }', [],
              {"gradcheck": False}),
    "DummyData": ('name: "l" type: "DummyData" top: "t0" top: "t1" dummy_data_param { '
                  'shape { dim: 2 dim: 3 } shape { dim: 4 } data_filler { type: "gaussian" } }', [],
                  {"gradcheck": False}),
    "Parameter": ('name: "l" type: "Parameter" top: "t0" parameter_param { shape { dim: 2 dim: 5 } }', [],
                  {"gradcheck": False}),
}
