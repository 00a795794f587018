// emu shim: the CUDA header cuda.h maps to the SIMT emulation header.
#pragma once
#include "cuda_emu.h"
