// Host harness for the kernels' block decoders: decode.cpp FORMAT IN OUT decodes every
// block of IN with quant.cuh's decode16 and writes the f32 values to OUT.
#include <cstdio>
#include <cstring>
#include <vector>
#include "quant.cuh"

template <class F>
static int run(const std::vector<u8>& in, std::vector<float>& out) {
    if (in.size() % F::BYTES) return 1;
    const size_t blocks = in.size() / F::BYTES;
    out.resize(blocks * F::QK);
    for (size_t b = 0; b < blocks; b++)
        for (int c = 0; c < F::QK / 16; c++)
            F::decode16(in.data() + b * F::BYTES, c, out.data() + b * F::QK + 16 * c);
    return 0;
}

int main(int argc, char** argv) {
    if (argc != 4) return 2;
    FILE* f = fopen(argv[2], "rb");
    if (!f) return 3;
    std::vector<u8> in;
    int ch;
    while ((ch = fgetc(f)) != EOF) in.push_back((u8)ch);
    fclose(f);
    std::vector<float> out;
    int rc = 4;
#define EG_RUN(name, F) if (!strcmp(argv[1], #name)) rc = run<F>(in, out);
    EG_FORMATS(EG_RUN)
    if (rc) return rc;
    FILE* o = fopen(argv[3], "wb");
    if (!o) return 5;
    fwrite(out.data(), sizeof(float), out.size(), o);
    fclose(o);
    return 0;
}
