# editkit: every target sets up its own environment in .venv from this checkout.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EXTRAS  ?= dev,train,app,bench
APP_ARGS ?=
export HF_HUB_OFFLINE ?= 1

.PHONY: venv test edit app tiny-model tiny-vae clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	# torch first, from the pinned pair (CPU machines take the local wheel files)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

venv: $(BIN)/.installed

test: venv
	$(BIN)/python -m pytest -q

edit: venv
	mkdir -p outputs
	$(BIN)/editkit edit docs/examples/shapes.png "Turn the purple diamond yellow." -o outputs/edit.png

# Retrain a shipped tiny model from its recipe (METHOD=instructcv|promptfix|unic|dream), reading the shipped
# shared VAE, and install it as editkit/models/$(METHOD)-tiny. Dream Engine starts from the shipped unic-tiny.
# `make tiny-vae` retrains that VAE (sized for a GPU).
METHOD ?= instructcv
# the recipes of the shipped model (PixWizard: CPU stages then one GPU stage; pixwizard_shapes is the full GPU one;
# UNIC-Adapter: two GPU-sized stages, then one CPU stage)
RECIPES = $(if $(filter dream,$(METHOD)),dream_fusion_from_unic dream_fusion_from_unic_ema,$(if $(filter unic,$(METHOD)),unic_shapes_gpu unic_shapes_gpu_more unic_shapes_subject,$(if $(filter pixwizard,$(METHOD)),pixwizard_shapes_cpu pixwizard_shapes_cpu_noise pixwizard_shapes_cpu_noise_strong pixwizard_shapes_weighted,$(if $(filter promptfix,$(METHOD)),promptfix_shapes promptfix_shapes_weighted promptfix_shapes_noise promptfix_shapes_noise_strong,$(if $(filter instructcv,$(METHOD)),instructcv_shapes instructcv_shapes_zsnr instructcv_shapes_words instructcv_shapes_anneal instructcv_shapes_anneal2 instructcv_shapes_paraphrase,$(METHOD)_shapes)))))
tiny-model: venv
	@test -f configs/train/$(firstword $(RECIPES)).yaml || { echo "no recipe for METHOD=$(METHOD): configs/train/$(firstword $(RECIPES)).yaml"; exit 2; }
	for r in $(RECIPES); do $(BIN)/python train/train.py --config configs/train/$$r.yaml || exit 1; done
	rm -rf editkit/models/$(METHOD)-tiny
	cp -r outputs/$(lastword $(RECIPES))/final editkit/models/$(METHOD)-tiny

tiny-vae: venv
	$(BIN)/python train/train.py --config configs/train/vae_shapes.yaml
	rm -rf editkit/models/instructcv-tiny/vae
	cp -r outputs/vae_shapes/final editkit/models/instructcv-tiny/vae

# the Gradio demo on http://127.0.0.1:7860 (the shipped tiny model; APP_ARGS="--model PATH --port N" for others)
app: venv
	$(BIN)/editkit app $(APP_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
