"""An MLServer runtime for the tests and the bench: runs an ONNX file with
onnxruntime behind the Open Inference Protocol v2. The file is the model
setting's `parameters.uri`; inputs and outputs keep the model's names."""

import numpy as np
import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i).astype(np.float32) for i in payload.inputs}
        names = [o.name for o in self._session.get_outputs()]
        wanted = [o.name for o in payload.outputs] if payload.outputs else names
        unknown = [name for name in wanted if name not in names]
        if unknown:
            raise InferenceError(f"unknown output {', '.join(unknown)} (the model has {', '.join(names)})")
        results = dict(zip(names, self._session.run(names, feeds)))
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name, results[name]) for name in wanted],
        )
