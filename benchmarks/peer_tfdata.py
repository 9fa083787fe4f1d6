"""The obvious alternative to `xray score`: what a user who knows TensorFlow writes by hand.

tf.data decodes the files in parallel (`decode_image`, gray, bilinear resize to the run's input),
batches of 64, one tf.function over the run's Keras members, their mean and the run's Platt
scaling; one probability per file to a CSV. No input gate, no prediction sets, no hashes:
fewer columns than `score` writes. Run: `python -m benchmarks.peer_tfdata RUN_FOLDER FILE_LIST OUT.csv`
(FILE_LIST: one path per line); benchmarks/score.py times it against `xray score`.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def main(run_folder: str, file_list: str, out: str) -> None:
    import keras
    import tensorflow as tf

    run = Path(run_folder)
    spec = json.loads((run / "model.json").read_text())
    h, w = spec["input_size"]
    members = [keras.models.load_model(run / name, compile=False) for name in spec["members"]]
    paths = Path(file_list).read_text().split("\n")[:-1]

    def load(path):
        image = tf.image.decode_image(tf.io.read_file(path), channels=1, expand_animations=False)
        return tf.image.resize(image, (h, w), method="bilinear")

    batches = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    batches = batches.batch(64).prefetch(tf.data.AUTOTUNE)

    @tf.function(reduce_retracing=True)
    def probability(x):
        p = tf.reduce_mean(tf.stack([m(x, training=False)[:, -1] for m in members], axis=1), axis=1)
        z = tf.math.log(p / (1 - p)) / spec["temperature"] + spec["bias"]
        return tf.math.sigmoid(z)

    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "probability"])
        done = 0
        for x in batches:
            p = probability(x).numpy()
            writer.writerows(zip(paths[done:done + len(p)], p.tolist()))
            done += len(p)


if __name__ == "__main__":
    main(*sys.argv[1:4])
