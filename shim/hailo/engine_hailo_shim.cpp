// engine_hailo_shim.cpp: the engine's C ABI (engine_hailo_shim.h) over HailoRT 5.x's C++
// GenAI API: one hailort::VDevice, one hailort::genai::LLM loaded from a HEF, and at most one
// LLMGenerator/LLMGeneratorCompletion at a time (the device's rule).
//
// Written against the public headers of HailoRT 5.x (hailo/hailort.h, hailo/vdevice.hpp,
// hailo/genai/llm/llm.hpp). It has NOT been compiled where it was written (HailoRT's headers
// are in no package registry) and has not run on a Hailo-10H: build it on the Pi with
// `cargo xtask build-hailo-shim` and expect to fix what the compiler says.
//
// Every entry point catches every exception: nothing C++ crosses the ABI.

#include "engine_hailo_shim.h"

#include <hailo/hailort.h>
#include <hailo/vdevice.hpp>
#include <hailo/genai/llm/llm.hpp>

#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

using hailort::genai::LLM;
using hailort::genai::LLMGenerator;
using hailort::genai::LLMGeneratorCompletion;
using hailort::genai::LLMGeneratorParams;
using hailort::genai::LLMParams;
using json = nlohmann::json;

struct ehs_llm {
    std::shared_ptr<hailort::VDevice> vdevice;
    std::unique_ptr<LLM> llm;
    std::unique_ptr<LLMGenerator> generator;
    std::unique_ptr<LLMGeneratorCompletion> completion;
    std::optional<std::pair<std::string, int32_t>> pending; // a piece the caller's buffer could not hold
    hailort::BufferPtr saved;
    hailo_device temperature_device = nullptr;
    std::string device_id;
    std::string last_error;
};

namespace {

thread_local std::string g_create_error;

int32_t fail(ehs_llm *l, int32_t code, const std::string &msg) {
    if (l != nullptr) {
        l->last_error = msg;
    } else {
        g_create_error = msg;
    }
    return code;
}

std::string status_text(hailo_status s) {
    const char *m = hailo_get_status_message(s);
    return std::string(m != nullptr ? m : "unknown status") + " (" + std::to_string(static_cast<int>(s)) + ")";
}

int32_t fail_status(ehs_llm *l, hailo_status s, const std::string &what) {
    int32_t code = (s == HAILO_TIMEOUT) ? EHS_ERR_TIMEOUT : EHS_ERR_DEVICE;
    return fail(l, code, what + ": " + status_text(s));
}

int32_t status_of(LLMGeneratorCompletion::Status s) {
    switch (s) {
    case LLMGeneratorCompletion::Status::GENERATING:
        return EHS_STATUS_GENERATING;
    case LLMGeneratorCompletion::Status::MAX_TOKENS_REACHED:
        return EHS_STATUS_MAX_TOKENS_REACHED;
    case LLMGeneratorCompletion::Status::LOGICAL_END_OF_GENERATION:
        return EHS_STATUS_LOGICAL_END_OF_GENERATION;
    case LLMGeneratorCompletion::Status::ABORTED:
        return EHS_STATUS_ABORTED;
    default:
        return EHS_STATUS_ABORTED;
    }
}

void end_generation(ehs_llm *l) {
    // the completion before the generator: a new generator may exist only once both are gone
    l->completion.reset();
    l->generator.reset();
    l->pending.reset();
}

int32_t start(ehs_llm *l, const ehs_gen_params *p, const std::vector<std::string> *messages,
              const char *raw) {
    if (l->llm == nullptr) {
        return fail(l, EHS_ERR_NOT_LOADED, "no HEF loaded");
    }
    if (l->completion != nullptr || l->generator != nullptr) {
        return fail(l, EHS_ERR_BUSY, "a generation is running");
    }
    auto params = l->llm->create_generator_params();
    if (!params) {
        return fail_status(l, params.status(), "create_generator_params");
    }
    LLMGeneratorParams gp = params.release();
    hailo_status s = gp.set_temperature(p->temperature > 0.0f ? p->temperature : 1.0f);
    if (s == HAILO_SUCCESS) s = gp.set_top_p(p->top_p);
    if (s == HAILO_SUCCESS && p->top_k > 0) s = gp.set_top_k(p->top_k);
    if (s == HAILO_SUCCESS) s = gp.set_frequency_penalty(p->frequency_penalty);
    if (s == HAILO_SUCCESS && p->max_generated_tokens > 0) s = gp.set_max_generated_tokens(p->max_generated_tokens);
    if (s == HAILO_SUCCESS) s = gp.set_do_sample(p->do_sample != 0);
    if (s == HAILO_SUCCESS) s = gp.set_seed(p->seed);
    if (s != HAILO_SUCCESS) {
        return fail_status(l, s, "setting the generation parameters");
    }
    auto gen = l->llm->create_generator(gp);
    if (!gen) {
        return fail_status(l, gen.status(), "create_generator");
    }
    l->generator = std::make_unique<LLMGenerator>(gen.release());
    s = (messages != nullptr) ? l->generator->write(*messages) : l->generator->write(std::string(raw));
    if (s != HAILO_SUCCESS) {
        end_generation(l);
        return fail_status(l, s, "writing the prompt");
    }
    auto comp = l->generator->generate();
    if (!comp) {
        end_generation(l);
        return fail_status(l, comp.status(), "generate");
    }
    l->completion = std::make_unique<LLMGeneratorCompletion>(comp.release());
    return EHS_OK;
}

} // namespace

#define EHS_GUARD(l, body)                                                          \
    try {                                                                           \
        body                                                                        \
    } catch (const std::exception &e) {                                             \
        return fail((l), EHS_ERR_INTERNAL, std::string("exception: ") + e.what()); \
    } catch (...) {                                                                 \
        return fail((l), EHS_ERR_INTERNAL, "unknown exception");                   \
    }

extern "C" {

uint32_t ehs_abi_version(void) { return EHS_ABI_VERSION; }

int32_t ehs_create(const char *config_json, ehs_llm **out) {
    EHS_GUARD(nullptr, {
        if (out == nullptr) {
            return fail(nullptr, EHS_ERR_INVALID, "out is NULL");
        }
        json cfg = json::object();
        if (config_json != nullptr && config_json[0] != '\0') {
            cfg = json::parse(config_json, nullptr, false);
            if (cfg.is_discarded() || !cfg.is_object()) {
                return fail(nullptr, EHS_ERR_INVALID, "the configuration is not a JSON object");
            }
        }
        auto l = std::make_unique<ehs_llm>();
        if (cfg.contains("device_id") && cfg["device_id"].is_string()) {
            l->device_id = cfg["device_id"].get<std::string>();
        }
        auto vd = l->device_id.empty() ? hailort::VDevice::create_shared()
                                       : hailort::VDevice::create_shared(std::vector<std::string>{l->device_id});
        if (!vd) {
            return fail(nullptr, EHS_ERR_NO_DEVICE, "cannot open a Hailo device: " + status_text(vd.status()));
        }
        l->vdevice = vd.release();
        *out = l.release();
        return EHS_OK;
    })
}

void ehs_release(ehs_llm *l) {
    if (l == nullptr) {
        return;
    }
    try {
        if (l->completion != nullptr) {
            (void)l->completion->abort();
        }
        end_generation(l);
        l->llm.reset();
        if (l->temperature_device != nullptr) {
            (void)hailo_release_device(l->temperature_device);
        }
        l->vdevice.reset();
    } catch (...) {
    }
    delete l;
}

const char *ehs_last_error(const ehs_llm *l) {
    return l != nullptr ? l->last_error.c_str() : g_create_error.c_str();
}

int32_t ehs_load_hef(ehs_llm *l, const char *hef_path, const char *params_json) {
    if (l == nullptr) return EHS_ERR_INVALID;
    EHS_GUARD(l, {
        if (hef_path == nullptr) {
            return fail(l, EHS_ERR_INVALID, "the HEF path is NULL");
        }
        json p = json::object();
        if (params_json != nullptr && params_json[0] != '\0') {
            p = json::parse(params_json, nullptr, false);
            if (p.is_discarded() || !p.is_object()) {
                return fail(l, EHS_ERR_INVALID, "the load parameters are not a JSON object");
            }
        }
        end_generation(l);
        l->llm.reset();
        std::string lora = p.value("lora", std::string());
        LLMParams params(hef_path, lora, p.value("optimize_memory_on_device", false));
        auto llm = LLM::create(l->vdevice, params);
        if (!llm) {
            return fail_status(l, llm.status(), std::string("cannot load ") + hef_path);
        }
        l->llm = std::make_unique<LLM>(llm.release());
        if (p.contains("stop_tokens") && p["stop_tokens"].is_array() && !p["stop_tokens"].empty()) {
            std::vector<std::string> stops = p["stop_tokens"].get<std::vector<std::string>>();
            hailo_status s = l->llm->set_stop_tokens(stops);
            if (s != HAILO_SUCCESS) {
                return fail_status(l, s, "set_stop_tokens");
            }
        }
        return EHS_OK;
    })
}

int32_t ehs_generate_raw(ehs_llm *l, const char *prompt, const ehs_gen_params *params) {
    if (l == nullptr) return EHS_ERR_INVALID;
    EHS_GUARD(l, {
        if (prompt == nullptr || params == nullptr) {
            return fail(l, EHS_ERR_INVALID, "prompt or params is NULL");
        }
        return start(l, params, nullptr, prompt);
    })
}

int32_t ehs_generate_messages(ehs_llm *l, const char *messages_json, const ehs_gen_params *params) {
    if (l == nullptr) return EHS_ERR_INVALID;
    EHS_GUARD(l, {
        if (messages_json == nullptr || params == nullptr) {
            return fail(l, EHS_ERR_INVALID, "messages or params is NULL");
        }
        json arr = json::parse(messages_json, nullptr, false);
        if (arr.is_discarded() || !arr.is_array()) {
            return fail(l, EHS_ERR_INVALID, "messages must be a JSON array");
        }
        std::vector<std::string> msgs;
        for (const auto &m : arr) {
            msgs.push_back(m.dump());
        }
        // messages (a system one above all) are only accepted on a fresh context
        hailo_status s = l->llm != nullptr ? l->llm->clear_context() : HAILO_SUCCESS;
        if (s != HAILO_SUCCESS) {
            return fail_status(l, s, "clear_context");
        }
        return start(l, params, &msgs, nullptr);
    })
}

int32_t ehs_read(ehs_llm *l, char *buf, size_t cap, size_t *len, uint32_t timeout_ms, int32_t *status) {
    if (l == nullptr) return EHS_ERR_INVALID;
    EHS_GUARD(l, {
        if (len == nullptr || status == nullptr) {
            return fail(l, EHS_ERR_INVALID, "len or status is NULL");
        }
        if (!l->pending.has_value()) {
            if (l->completion == nullptr) {
                return fail(l, EHS_ERR_NO_GENERATION, "no generation is running");
            }
            auto piece = l->completion->read(std::chrono::milliseconds(timeout_ms));
            if (!piece) {
                return fail_status(l, piece.status(), "read");
            }
            l->pending = std::make_pair(piece.release(), status_of(l->completion->generation_status()));
        }
        const std::string &text = l->pending->first;
        *len = text.size();
        if (buf == nullptr || cap < text.size()) {
            return fail(l, EHS_ERR_BUFFER_TOO_SMALL, "the buffer is too small");
        }
        std::memcpy(buf, text.data(), text.size());
        *status = l->pending->second;
        l->pending.reset();
        if (*status != EHS_STATUS_GENERATING) {
            end_generation(l);
        }
        return EHS_OK;
    })
}

int32_t ehs_abort(ehs_llm *l) {
    if (l == nullptr) return EHS_ERR_INVALID;
    EHS_GUARD(l, {
        if (l->completion == nullptr) {
            end_generation(l);
            return EHS_OK;
        }
        hailo_status s = l->completion->abort();
        end_generation(l);
        if (s != HAILO_SUCCESS) {
            return fail_status(l, s, "abort");
        }
        return EHS_OK;
    })
}

int32_t ehs_tokenize(ehs_llm *l, const char *text, int32_t *ids, size_t cap, size_t *len) {
    if (l == nullptr) return EHS_ERR_INVALID;
    EHS_GUARD(l, {
        if (text == nullptr || len == nullptr) {
            return fail(l, EHS_ERR_INVALID, "text or len is NULL");
        }
        if (l->llm == nullptr) {
            return fail(l, EHS_ERR_NOT_LOADED, "no HEF loaded");
        }
        if (l->completion != nullptr) {
            return fail(l, EHS_ERR_BUSY, "a generation is running");
        }
        auto toks = l->llm->tokenize(std::string(text));
        if (!toks) {
            return fail_status(l, toks.status(), "tokenize");
        }
        const std::vector<int> &v = toks.value();
        *len = v.size();
        if (ids == nullptr || cap < v.size()) {
            return fail(l, EHS_ERR_BUFFER_TOO_SMALL, "the id buffer is too small");
        }
        for (size_t i = 0; i < v.size(); i++) {
            ids[i] = static_cast<int32_t>(v[i]);
        }
        return EHS_OK;
    })
}

int32_t ehs_max_context(ehs_llm *l, size_t *out) {
    if (l == nullptr) return EHS_ERR_INVALID;
    EHS_GUARD(l, {
        if (out == nullptr) return fail(l, EHS_ERR_INVALID, "out is NULL");
        if (l->llm == nullptr) return fail(l, EHS_ERR_NOT_LOADED, "no HEF loaded");
        auto n = l->llm->max_context_capacity();
        if (!n) return fail_status(l, n.status(), "max_context_capacity");
        *out = n.value();
        return EHS_OK;
    })
}

int32_t ehs_context_usage(ehs_llm *l, size_t *out) {
    if (l == nullptr) return EHS_ERR_INVALID;
    EHS_GUARD(l, {
        if (out == nullptr) return fail(l, EHS_ERR_INVALID, "out is NULL");
        if (l->llm == nullptr) return fail(l, EHS_ERR_NOT_LOADED, "no HEF loaded");
        auto n = l->llm->get_context_usage_size();
        if (!n) return fail_status(l, n.status(), "get_context_usage_size");
        *out = n.value();
        return EHS_OK;
    })
}

int32_t ehs_clear_context(ehs_llm *l) {
    if (l == nullptr) return EHS_ERR_INVALID;
    EHS_GUARD(l, {
        if (l->llm == nullptr) return fail(l, EHS_ERR_NOT_LOADED, "no HEF loaded");
        if (l->completion != nullptr) return fail(l, EHS_ERR_BUSY, "a generation is running");
        hailo_status s = l->llm->clear_context();
        if (s != HAILO_SUCCESS) return fail_status(l, s, "clear_context");
        return EHS_OK;
    })
}

int32_t ehs_save_context(ehs_llm *l, uint8_t *buf, size_t cap, size_t *len) {
    if (l == nullptr) return EHS_ERR_INVALID;
    EHS_GUARD(l, {
        if (len == nullptr) return fail(l, EHS_ERR_INVALID, "len is NULL");
        if (l->llm == nullptr) return fail(l, EHS_ERR_NOT_LOADED, "no HEF loaded");
        if (buf == nullptr) {
            auto blob = l->llm->save_context();
            if (!blob) return fail_status(l, blob.status(), "save_context");
            l->saved = blob.release();
        }
        if (l->saved == nullptr) return fail(l, EHS_ERR_INVALID, "call with a NULL buffer first");
        *len = l->saved->size();
        if (buf == nullptr || cap < l->saved->size()) {
            return fail(l, EHS_ERR_BUFFER_TOO_SMALL, "the buffer is too small");
        }
        std::memcpy(buf, l->saved->data(), l->saved->size());
        return EHS_OK;
    })
}

int32_t ehs_load_context(ehs_llm *l, const uint8_t *buf, size_t len) {
    if (l == nullptr) return EHS_ERR_INVALID;
    EHS_GUARD(l, {
        if (buf == nullptr) return fail(l, EHS_ERR_INVALID, "buf is NULL");
        if (l->llm == nullptr) return fail(l, EHS_ERR_NOT_LOADED, "no HEF loaded");
        hailo_status s = l->llm->load_context(hailort::MemoryView::create_const(buf, len));
        if (s != HAILO_SUCCESS) return fail_status(l, s, "load_context");
        return EHS_OK;
    })
}

int32_t ehs_chip_temperature(ehs_llm *l, float *ts0, float *ts1) {
    if (l == nullptr) return EHS_ERR_INVALID;
    EHS_GUARD(l, {
        if (ts0 == nullptr || ts1 == nullptr) return fail(l, EHS_ERR_INVALID, "out is NULL");
        if (l->temperature_device == nullptr) {
            // the C API on the same physical device as the VDevice
            hailo_device_id_t id{};
            const hailo_device_id_t *idp = nullptr;
            auto ids = l->vdevice->get_physical_devices_ids();
            if (ids && !ids.value().empty()) {
                std::strncpy(id.id, ids.value()[0].c_str(), HAILO_MAX_DEVICE_ID_LENGTH - 1);
                idp = &id;
            }
            hailo_status s = hailo_create_device_by_id(idp, &l->temperature_device);
            if (s != HAILO_SUCCESS) {
                l->temperature_device = nullptr;
                return fail_status(l, s, "hailo_create_device_by_id (for the temperature)");
            }
        }
        hailo_chip_temperature_info_t info{};
        hailo_status s = hailo_get_chip_temperature(l->temperature_device, &info);
        if (s != HAILO_SUCCESS) return fail_status(l, s, "hailo_get_chip_temperature");
        *ts0 = info.ts0_temperature;
        *ts1 = info.ts1_temperature;
        return EHS_OK;
    })
}

} // extern "C"
