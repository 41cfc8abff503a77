/*
 * engine_hailo_shim.h: the C ABI between the engine and its Hailo shim.
 *
 * The shim (engine_hailo_shim.cpp beside this file) wraps HailoRT 5.x's C++ GenAI API
 * (hailort::genai::LLM over a hailort::VDevice) behind plain C functions, so that the
 * engine can load it at run time with dlopen and build everywhere without HailoRT.
 * The engine's fake shim (crates/engine-hailo-fake) implements the same functions for tests,
 * and crates/engine-hailo/src/abi.rs mirrors this file on the Rust side: change all three
 * together and bump EHS_ABI_VERSION.
 *
 * Rules:
 *  - Every function returning int32_t returns EHS_OK (0) or an EHS_ERR_* code; the message
 *    of the last failure on a handle is ehs_last_error(handle) (valid until the next call).
 *  - Strings are UTF-8 and NUL-terminated. Nothing crosses the ABI as a C++ type or exception:
 *    the shim catches everything and returns EHS_ERR_INTERNAL.
 *  - One handle is used by one thread at a time; one generation runs at a time per handle.
 */
#ifndef ENGINE_HAILO_SHIM_H
#define ENGINE_HAILO_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this ABI; the engine refuses a shim reporting another. */
#define EHS_ABI_VERSION 1u

/* Return codes. */
#define EHS_OK 0
#define EHS_ERR_INVALID 1          /* bad argument (NULL, bad JSON, ...) */
#define EHS_ERR_NO_DEVICE 2        /* no Hailo device, or it cannot be opened */
#define EHS_ERR_TIMEOUT 3          /* nothing arrived within the timeout */
#define EHS_ERR_BUSY 4             /* a generation is running */
#define EHS_ERR_BUFFER_TOO_SMALL 5 /* *len holds the size needed; call again */
#define EHS_ERR_NOT_LOADED 6       /* no HEF loaded yet */
#define EHS_ERR_DEVICE 7           /* HailoRT returned an error status */
#define EHS_ERR_NO_GENERATION 8    /* read without a running generation */
#define EHS_ERR_CONTEXT_FULL 9     /* the prompt does not fit in the context */
#define EHS_ERR_INTERNAL 10        /* an exception or an unexpected state in the shim */

/* Generation status after a read (HailoRT's LLMGeneratorCompletion::Status). */
#define EHS_STATUS_GENERATING 0
#define EHS_STATUS_MAX_TOKENS_REACHED 1
#define EHS_STATUS_LOGICAL_END_OF_GENERATION 2
#define EHS_STATUS_ABORTED 3

/* Sampling of one generation (HailoRT's LLMGeneratorParams). */
typedef struct ehs_gen_params {
    float temperature;
    float top_p;
    uint32_t top_k;
    float frequency_penalty;
    uint32_t max_generated_tokens; /* 0 = the model's default */
    int32_t do_sample;             /* 0 = greedy */
    uint32_t seed;                 /* 0xFFFFFFFF = random (HAILO_RANDOM_SEED) */
} ehs_gen_params;

/* An opaque shim handle: one VDevice and at most one loaded LLM. */
typedef struct ehs_llm ehs_llm;

/* The ABI version the shim was built for (EHS_ABI_VERSION). */
uint32_t ehs_abi_version(void);

/* Opens the device. config_json: {"device_id": "..."} or NULL/"{}" for any device. */
int32_t ehs_create(const char *config_json, ehs_llm **out);

/* Releases the model and the device. NULL is ignored. */
void ehs_release(ehs_llm *llm);

/* The message of the last failure on llm (or of ehs_create when llm is NULL). Never NULL. */
const char *ehs_last_error(const ehs_llm *llm);

/* Loads a HEF. params_json: {"lora": "", "optimize_memory_on_device": false} or NULL. */
int32_t ehs_load_hef(ehs_llm *llm, const char *hef_path, const char *params_json);

/* Starts a generation from a raw prompt, written as-is (appended to the context). */
int32_t ehs_generate_raw(ehs_llm *llm, const char *prompt, const ehs_gen_params *params);

/* Starts a generation from chat messages, a JSON array of {"role", "content"} objects;
 * the model's own template is applied. */
int32_t ehs_generate_messages(ehs_llm *llm, const char *messages_json,
                              const ehs_gen_params *params);

/* Reads the next piece of text into buf (not NUL-terminated; *len bytes) and the status
 * after it, waiting at most timeout_ms. When the status is not GENERATING the generation
 * is over. EHS_ERR_BUFFER_TOO_SMALL keeps the piece for the next call. */
int32_t ehs_read(ehs_llm *llm, char *buf, size_t cap, size_t *len, uint32_t timeout_ms,
                 int32_t *status);

/* Aborts the running generation (EHS_OK when none runs). */
int32_t ehs_abort(ehs_llm *llm);

/* Token ids of text by the device's tokenizer. With cap too small (or ids NULL) returns
 * EHS_ERR_BUFFER_TOO_SMALL and the count in *len. */
int32_t ehs_tokenize(ehs_llm *llm, const char *text, int32_t *ids, size_t cap, size_t *len);

/* Tokens the context holds at most / now. */
int32_t ehs_max_context(ehs_llm *llm, size_t *out);
int32_t ehs_context_usage(ehs_llm *llm, size_t *out);

/* Empties the context. */
int32_t ehs_clear_context(ehs_llm *llm);

/* Saves the context as a blob (two calls: the first with buf NULL gets the size; the blob
 * is kept by the shim until the next save). */
int32_t ehs_save_context(ehs_llm *llm, uint8_t *buf, size_t cap, size_t *len);

/* Loads a blob saved on the same model. */
int32_t ehs_load_context(ehs_llm *llm, const uint8_t *buf, size_t len);

/* Chip temperature in degrees Celsius of the two sensors (hailo_get_chip_temperature). */
int32_t ehs_chip_temperature(ehs_llm *llm, float *ts0, float *ts1);

#ifdef __cplusplus
}
#endif

#endif /* ENGINE_HAILO_SHIM_H */
