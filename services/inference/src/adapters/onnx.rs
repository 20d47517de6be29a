//! The embedded runtime: an ONNX model loaded by tract at start, its input
//! `[N, 1, rows, columns]` f32 with N symbolic, so a series' slices run as
//! one batch.

use std::collections::BTreeMap;
use std::path::Path;

use tract::prelude::*;

use super::runtime::RuntimeError;

/// A loaded model, ready to run.
#[derive(Debug)]
pub struct Embedded {
    runnable: Runnable,
    input: String,
    outputs: Vec<String>,
    rows: usize,
    columns: usize,
}

impl Embedded {
    /// Loads `path`, its input `input` fixed to `[N, 1, rows, columns]` f32;
    /// every name in `outputs` must be one of its outputs.
    pub fn load(
        path: &Path,
        input: &str,
        rows: u32,
        columns: u32,
        outputs: &[String],
    ) -> Result<Embedded, RuntimeError> {
        let load = |reason: String| RuntimeError::Load { path: path.display().to_string(), reason };
        let mut model = tract::onnx().and_then(|o| o.load(path)).map_err(|e| load(format!("{e:#}")))?;
        let name = model.input_name(0).map_err(|e| load(format!("{e:#}")))?;
        if name != input {
            return Err(load(format!("its input is {name:?}, the configuration says {input:?}")));
        }
        model.set_input_fact(0, format!("N,1,{rows},{columns},f32").as_str()).map_err(|e| load(format!("{e:#}")))?;
        let model = model.into_model().map_err(|e| load(format!("{e:#}")))?;
        let count = model.output_count().map_err(|e| load(format!("{e:#}")))?;
        let names: Vec<String> = (0..count).filter_map(|i| model.output_name(i).ok()).collect();
        for wanted in outputs {
            if !names.contains(wanted) {
                return Err(load(format!("no output {wanted:?} (it has {})", names.join(", "))));
            }
        }
        let runnable = model.into_runnable().map_err(|e| load(format!("{e:#}")))?;
        Ok(Embedded {
            runnable,
            input: input.to_owned(),
            outputs: names,
            rows: rows as usize,
            columns: columns as usize,
        })
    }

    /// Runs `slices` (each rows × columns) as one batch: each output's
    /// scores, one per slice.
    pub fn run(&self, slices: &[Vec<f32>]) -> Result<BTreeMap<String, Vec<f32>>, RuntimeError> {
        let mut data = Vec::with_capacity(slices.len() * self.rows * self.columns);
        for s in slices {
            data.extend_from_slice(s);
        }
        self.run_batch(&data, slices.len())
    }

    /// Runs `n` slices laid out one after another in `data` (row-major,
    /// `n` × rows × columns) as one batch.
    pub fn run_batch(&self, data: &[f32], n: usize) -> Result<BTreeMap<String, Vec<f32>>, RuntimeError> {
        let input = Tensor::from_slice(&[n, 1, self.rows, self.columns], data)
            .map_err(|e| RuntimeError::Run(format!("{} input: {e:#}", self.input)))?;
        let outputs = self.runnable.run([input]).map_err(|e| RuntimeError::Run(format!("{e:#}")))?;
        let mut scores = BTreeMap::new();
        for (name, tensor) in self.outputs.iter().zip(outputs) {
            let shape = tensor.shape().map_err(|e| RuntimeError::Output(format!("{name}: {e:#}")))?.to_vec();
            let values = tensor
                .as_slice::<f32>()
                .map_err(|e| RuntimeError::Output(format!("{name}: expected f32: {e:#}")))?
                .to_vec();
            if values.len() != n {
                return Err(RuntimeError::Output(format!("{name}: expected shape [{n}], found {shape:?}")));
            }
            scores.insert(name.clone(), values);
        }
        Ok(scores)
    }
}
