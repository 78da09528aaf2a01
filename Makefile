# shardgate on Docker (see README.md, "Docker"). No registry is needed: the image is
# `FROM scratch` with our statically linked binary.
#
#   make build   the image (scripts/image.sh)
#   make up      build, then the manager + router (+ the nodes the manager starts) in the
#                background; returns once the router answers on 127.0.0.1:5000
#   make down    stop and remove every container and the network; data volumes are kept
#   make clean   `down`, and remove the data volumes too
#   make logs    follow the manager's and the router's logs
#   make ps      the deployment's containers, nodes included

PROJECT ?= shardgate
IMAGE ?= shardgate:latest
SERVERS ?= 3
PORT ?= 5000
BINARY_PORT ?= 5002

export SHARDGATE_PROJECT := $(PROJECT)
export SHARDGATE_IMAGE := $(IMAGE)
export SHARDGATE_SERVERS := $(SERVERS)
export SHARDGATE_HTTP_PORT := $(PORT)
export SHARDGATE_BINARY_PORT := $(BINARY_PORT)

COMPOSE := docker-compose -p $(PROJECT) -f docker-compose.yml

.PHONY: build up down clean logs ps

build:
	IMAGE=$(IMAGE) scripts/image.sh

up: build
	$(COMPOSE) up -d
	scripts/docker-wait.sh

down:
	scripts/docker-down.sh

clean:
	scripts/docker-down.sh --volumes

logs:
	$(COMPOSE) logs -f

ps:
	docker ps -a --filter label=com.docker.compose.project=$(PROJECT)
	docker ps -a --filter label=io.shardgate.project=$(PROJECT)
