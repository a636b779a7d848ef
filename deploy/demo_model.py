"""Make the demo model the deployment serves, unless it is there already.

docker-compose.yml's one-shot `demo-model` service runs this in the gateway image before
anything else starts:  python demo_model.py /models/digits.skops
It trains a small scikit-learn classifier of handwritten digits (8x8 pixels, 64 inputs)
and saves it in skops format, with a sample request next to it. Replace it with your
own model by changing `models:` in modelfence.yaml (see the Deployment section of README).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(target: Path) -> None:
    if target.exists():
        print(f"{target} exists; kept")
        return
    import skops.io as sio
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x_train, y_train)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    sio.dump(model, tmp)
    tmp.replace(target)  # a replica never sees half a file
    sample = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                          "data": [float(v) for v in x_test[0]]}]}
    (target.parent / "sample-request.json").write_text(json.dumps(sample))
    print(f"{target}: digits classifier, test accuracy {model.score(x_test, y_test):.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python demo_model.py /models/digits.skops")
    main(Path(sys.argv[1]))
