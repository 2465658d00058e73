# ScribbleBox: `make serve` sets up and starts the backend; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 9090

.PHONY: setup serve demo test ls-venv browser redis sam2 bench-track bench-long-tracks clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,cvat,learned]' 'torch==2.13.0'  # CPU torch pinned: a bare torch pulls a multi-GB CUDA build
	touch $@

serve: setup  ## set up, then serve the Label Studio ML backend on :$(PORT) (gunicorn, 2 workers)
	$(VENV)/bin/scribblebox serve --port $(PORT)

demo: setup  ## set up, make a synthetic video and track its object from one box
	$(PY) -c "from scribblebox.models.synthetic import make_moving_box_video as m; m('var/demo.mp4', num_frames=100)"
	$(VENV)/bin/scribblebox track var/demo.mp4 --box 60,80,120,90 -o var/demo-track.json

ls-venv:  ## Label Studio 1.23.2 in its own venv, for the end-to-end tests
	bash scripts/label-studio-venv.sh

browser: setup  ## Debian's Chromium + Playwright, for the browser end-to-end test
	bash scripts/install-browser.sh

redis:  ## Debian's redis-server, for the Redis/RQ tests
	bash scripts/install-redis.sh

sam2: setup  ## SAM2 (sam2 1.1.0, CPU build, no weights) for the optional masks.engine sam2 and its tests
	bash scripts/install-sam2.sh

test: setup ls-venv browser redis sam2
	$(PY) -m pytest -q

bench-track: setup
	$(VENV)/bin/scribblebox bench-track ../shared/data/davis2016-train -o docs/bench-track.json
	$(PY) scripts/bench_track_speed.py --repeats 5

bench-long-tracks: setup  # about 45 min per run on one core; the two runs are independent
	$(PY) scripts/bench_long_tracks.py --frames 400 --continuity 0 -o var/long-baseline.json
	$(PY) scripts/bench_long_tracks.py --frames 400 -o var/long.json

clean:
	rm -rf $(VENV) .cache var
