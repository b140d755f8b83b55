// Fused CPU training operators for seesawface (built and loaded with mx.library.load by recipes/fused/library.py).
//
// Each replaces a chain of MXNet operators whose backward passes make several trips over large feature maps:
//   seesaw_swish(x)         = x * sigmoid(x)                      (Activation + elemwise_mul + 3 backward ops)
//   seesaw_prelu(x, alpha)  = x > 0 ? x : alpha[c] * x            (LeakyReLU prelu: its CPU backward is ~50x
//                                                                    slower than a convolution's)
//   seesaw_scale(x, w)      = x[n, c, ...] * w[n, c]              (broadcast_mul of the SE gate)
//   seesaw_concat_shuffle(a, b, groups=2)                          (Concat + reshape/SwapAxis/reshape)
//                           = channel shuffle of concat(a, b) on axis 1: output channel i*g + j is input
//                             channel j*(C/g) + i
//   seesaw_split(x, point=k) = (x[:, :k], x[:, k:])                (two slice_axis, or split_v2: both slow)
//   seesaw_scale_split(x, w, point=k) = seesaw_split(seesaw_scale(x, w), point=k)   (one pass; and the scaled
//                             map, which only the split read, is not kept for the backward: lib_api keeps every
//                             input and output of a library operator alive until its backward has run)
//   seesaw_bn_swish(x, gamma, beta, running_mean, running_var, is_train)
//                           = swish(BatchNorm(x)) (BatchNorm + Activation + elemwise_mul; the BatchNorm output is
//                             not kept: the backward recomputes it from x and the saved mean and 1/std)
//   seesaw_bn_swish_concat(a, b, BatchNorm parameters of a, of b, is_train, groups)
//                           = seesaw_concat_shuffle(seesaw_bn_swish(a, ...), seesaw_bn_swish(b, ...), groups)
//                             (groups=1: plain concat), writing each channel straight to its place
//   seesaw_spatial_mean(x)  = mean of x[n, c] over the spatial axes, (N, C, 1, ...)  (AdaptiveAvgPooling2D to 1x1
//                                                                    of the SE gate: a slow generic backward)
// Inputs are float32, laid out (N, C, ...) with C the second axis. Forward and backward are single passes,
// parallel over (n, c) planes with OpenMP; per-channel reductions are summed in double per plane.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

using namespace mxnet::ext;
typedef std::unordered_map<std::string, std::string> Attrs;

namespace {

// The argument is clamped: built with -ffast-math (finite math only), exp(-v) overflowing to inf below v = -88.7
// gives NaN in the vectorised loops instead of a sigmoid of 0; below -80 the sigmoid is < 2e-35 either way.
inline float sigmoidf(float v) { return 1.0f / (1.0f + std::exp(-std::max(v, -80.0f))); }

// (N, C, S) view of a tensor with at least two axes.
struct Planes {
  int64_t n, c, s;
};

Planes planes_of(const MXTensor& t) {
  Planes p{t.shape[0], t.shape.size() > 1 ? t.shape[1] : 1, 1};
  for (size_t i = 2; i < t.shape.size(); ++i) p.s *= t.shape[i];
  return p;
}

bool all_float32(const std::vector<MXTensor>& ts) {
  for (const auto& t : ts)
    if (t.dtype != kFloat32) return false;
  return true;
}

MXReturnValue fail(const char* op, const char* what) {
  MX_ERROR_MSG << op << ": " << what;
  return MX_FAIL;
}

MXReturnValue all_float32_types(const char* op, std::vector<int>* in, std::vector<int>* out) {
  for (int t : *in)
    if (t != kFloat32) return fail(op, "only float32 inputs are supported");
  for (auto& t : *out) t = kFloat32;
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------------------------- shapes

MXReturnValue attrs_1in(const Attrs&, int* num_in, int* num_out) {
  *num_in = 1;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue attrs_2in(const Attrs&, int* num_in, int* num_out) {
  *num_in = 2;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue type_float32(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  return all_float32_types("seesaw ops", in, out);
}

MXReturnValue shape_same_as_first(const Attrs&, std::vector<std::vector<unsigned int>>* in,
                                  std::vector<std::vector<unsigned int>>* out) {
  (*out)[0] = (*in)[0];
  return MX_SUCCESS;
}

MXReturnValue shape_prelu(const Attrs&, std::vector<std::vector<unsigned int>>* in,
                          std::vector<std::vector<unsigned int>>* out) {
  const auto& x = (*in)[0];
  const auto& a = (*in)[1];
  if (x.size() < 2 || a.size() != 1 || a[0] != x[1])
    return fail("seesaw_prelu", "expects x (N, C, ...) and alpha (C,)");
  (*out)[0] = x;
  return MX_SUCCESS;
}

// What is wrong with x (N, C, ...) and a per-(image, channel) gate w (N, C, 1, ...), or nullptr.
const char* scale_shape_error(const std::vector<unsigned int>& x, const std::vector<unsigned int>& w) {
  if (x.size() < 2 || w.size() < 2 || w[0] != x[0] || w[1] != x[1]) return "expects x (N, C, ...) and w (N, C, 1, ...)";
  for (size_t i = 2; i < w.size(); ++i)
    if (w[i] != 1) return "w must be (N, C, 1, ...)";
  return nullptr;
}

MXReturnValue shape_scale(const Attrs&, std::vector<std::vector<unsigned int>>* in,
                          std::vector<std::vector<unsigned int>>* out) {
  const auto& x = (*in)[0];
  if (const char* error = scale_shape_error(x, (*in)[1])) return fail("seesaw_scale", error);
  (*out)[0] = x;
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------------------------- swish

MXReturnValue swish_forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                            const OpResource&) {
  if (!all_float32(*in)) return fail("seesaw_swish", "float32 only");
  const float* x = (*in)[0].data<float>();
  float* y = (*out)[0].data<float>();
  const int64_t size = (*in)[0].size();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < size; ++i) y[i] = x[i] * sigmoidf(x[i]);
  return MX_SUCCESS;
}

// inputs: dy, x, y   outputs: dx
MXReturnValue swish_backward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                             const OpResource&) {
  const float* dy = (*in)[0].data<float>();
  const float* x = (*in)[1].data<float>();
  float* dx = (*out)[0].data<float>();
  const int64_t size = (*in)[1].size();
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < size; ++i) {
    const float s = sigmoidf(x[i]);
    dx[i] = dy[i] * (s + x[i] * s * (1.0f - s));
  }
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------------------------- prelu

MXReturnValue prelu_forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                            const OpResource&) {
  if (!all_float32(*in)) return fail("seesaw_prelu", "float32 only");
  const Planes p = planes_of((*in)[0]);
  const float* x = (*in)[0].data<float>();
  const float* alpha = (*in)[1].data<float>();
  float* y = (*out)[0].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t plane = 0; plane < p.n * p.c; ++plane) {
    const float a = alpha[plane % p.c];
    const float* xp = x + plane * p.s;
    float* yp = y + plane * p.s;
#pragma omp simd
    for (int64_t i = 0; i < p.s; ++i) yp[i] = xp[i] > 0.0f ? xp[i] : a * xp[i];
  }
  return MX_SUCCESS;
}

// inputs: dy, x, alpha, y   outputs: dx, dalpha
MXReturnValue prelu_backward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                             const OpResource&) {
  const Planes p = planes_of((*in)[1]);
  const float* dy = (*in)[0].data<float>();
  const float* x = (*in)[1].data<float>();
  const float* alpha = (*in)[2].data<float>();
  float* dx = (*out)[0].data<float>();
  float* dalpha = (*out)[1].data<float>();
  std::vector<double> partial(p.n * p.c);
#pragma omp parallel for schedule(static)
  for (int64_t plane = 0; plane < p.n * p.c; ++plane) {
    const float a = alpha[plane % p.c];
    const float* xp = x + plane * p.s;
    const float* dyp = dy + plane * p.s;
    float* dxp = dx + plane * p.s;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < p.s; ++i) {
      const bool pos = xp[i] > 0.0f;
      dxp[i] = pos ? dyp[i] : a * dyp[i];
      acc += pos ? 0.0f : dyp[i] * xp[i];
    }
    partial[plane] = acc;
  }
  for (int64_t c = 0; c < p.c; ++c) {
    double sum = 0.0;
    for (int64_t n = 0; n < p.n; ++n) sum += partial[n * p.c + c];
    dalpha[c] = static_cast<float>(sum);
  }
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------------------------- scale

// y = x * w[n, c] plane by plane; plane_of(img, c) says where each output plane goes (the same layout as x, or
// split across two tensors).
template <class PlaneOf>
void scale_planes(const float* x, const float* w, const Planes& p, PlaneOf plane_of) {
#pragma omp parallel for schedule(static)
  for (int64_t plane = 0; plane < p.n * p.c; ++plane) {
    const float g = w[plane];
    const float* xp = x + plane * p.s;
    float* yp = plane_of(plane / p.c, plane % p.c);
#pragma omp simd
    for (int64_t i = 0; i < p.s; ++i) yp[i] = xp[i] * g;
  }
}

// dx = dy * w[n, c] and dw[n, c] = sum(dy * x); plane_of(img, c) says where each dy plane is.
template <class PlaneOf>
void scale_planes_backward(const float* x, const float* w, const Planes& p, PlaneOf plane_of, float* dx, float* dw) {
#pragma omp parallel for schedule(static)
  for (int64_t plane = 0; plane < p.n * p.c; ++plane) {
    const float g = w[plane];
    const float* xp = x + plane * p.s;
    const float* dyp = plane_of(plane / p.c, plane % p.c);
    float* dxp = dx + plane * p.s;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < p.s; ++i) {
      dxp[i] = dyp[i] * g;
      acc += dyp[i] * xp[i];
    }
    dw[plane] = acc;
  }
}

MXReturnValue scale_forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                            const OpResource&) {
  if (!all_float32(*in)) return fail("seesaw_scale", "float32 only");
  const Planes p = planes_of((*in)[0]);
  float* y = (*out)[0].data<float>();
  scale_planes((*in)[0].data<float>(), (*in)[1].data<float>(), p,
               [&](int64_t img, int64_t c) { return y + (img * p.c + c) * p.s; });
  return MX_SUCCESS;
}

// inputs: dy, x, w, y   outputs: dx, dw
MXReturnValue scale_backward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                             const OpResource&) {
  const Planes p = planes_of((*in)[1]);
  const float* dy = (*in)[0].data<float>();
  scale_planes_backward((*in)[1].data<float>(), (*in)[2].data<float>(), p,
                        [&](int64_t img, int64_t c) { return dy + (img * p.c + c) * p.s; },
                        (*out)[0].data<float>(), (*out)[1].data<float>());
  return MX_SUCCESS;
}


// ------------------------------------------------------------------------------------------- concat + shuffle

int groups_of(const Attrs& attrs) {
  auto it = attrs.find("groups");
  return it == attrs.end() ? 2 : std::stoi(it->second);
}

MXReturnValue attrs_shuffle(const Attrs& attrs, int* num_in, int* num_out) {
  if (groups_of(attrs) < 1) return fail("seesaw_concat_shuffle", "groups must be >= 1");
  *num_in = 2;
  *num_out = 1;
  return MX_SUCCESS;
}

// What is wrong with a (N, Ca, ...) and b (N, Cb, ...) as the two sides of a channel concat with a shuffle of
// ``groups`` groups, or nullptr.
const char* concat_shape_error(const std::vector<unsigned int>& a, const std::vector<unsigned int>& b, int groups) {
  if (a.size() < 2 || a.size() != b.size() || a[0] != b[0]) return "a and b must be (N, Ca, ...) and (N, Cb, ...)";
  for (size_t i = 2; i < a.size(); ++i)
    if (a[i] != b[i]) return "a and b differ beyond axis 1";
  if ((a[1] + b[1]) % groups) return "channels not divisible by groups";
  return nullptr;
}

MXReturnValue shape_shuffle(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in,
                            std::vector<std::vector<unsigned int>>* out) {
  const auto& a = (*in)[0];
  const auto& b = (*in)[1];
  if (const char* error = concat_shape_error(a, b, groups_of(attrs))) return fail("seesaw_concat_shuffle", error);
  (*out)[0] = a;
  (*out)[0][1] = a[1] + b[1];
  return MX_SUCCESS;
}

// Copies planes between concat(a, b) (source channel k) and the shuffled output (channel i*g + j).
template <bool kForward>
void shuffle_planes(float* a, float* b, float* out, int64_t n, int64_t ca, int64_t cb, int64_t s, int groups) {
  const int64_t c = ca + cb, per = c / groups;
#pragma omp parallel for schedule(static)
  for (int64_t plane = 0; plane < n * c; ++plane) {
    const int64_t img = plane / c, dst = plane % c;
    const int64_t src = (dst % groups) * per + dst / groups;
    float* side = src < ca ? a + (img * ca + src) * s : b + (img * cb + src - ca) * s;
    float* o = out + plane * s;
    if (kForward) {
      std::copy(side, side + s, o);
    } else {
      std::copy(o, o + s, side);
    }
  }
}

MXReturnValue shuffle_forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                              const OpResource&) {
  if (!all_float32(*in)) return fail("seesaw_concat_shuffle", "float32 only");
  const Planes pa = planes_of((*in)[0]), pb = planes_of((*in)[1]);
  shuffle_planes<true>((*in)[0].data<float>(), (*in)[1].data<float>(), (*out)[0].data<float>(), pa.n, pa.c, pb.c,
                       pa.s, groups_of(attrs));
  return MX_SUCCESS;
}

// inputs: dout, a, b, out   outputs: da, db
MXReturnValue shuffle_backward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                               const OpResource&) {
  const Planes pa = planes_of((*out)[0]), pb = planes_of((*out)[1]);
  shuffle_planes<false>((*out)[0].data<float>(), (*out)[1].data<float>(), (*in)[0].data<float>(), pa.n, pa.c, pb.c,
                        pa.s, groups_of(attrs));
  return MX_SUCCESS;
}


// ------------------------------------------------------------------------------------------- uneven split

int64_t point_of(const Attrs& attrs) {
  auto it = attrs.find("point");
  return it == attrs.end() ? -1 : std::stoll(it->second);
}

MXReturnValue attrs_split(const Attrs& attrs, int* num_in, int* num_out) {
  if (point_of(attrs) < 1) return fail("seesaw_split", "needs point >= 1");
  *num_in = 1;
  *num_out = 2;
  return MX_SUCCESS;
}

MXReturnValue type_split(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  if ((*in)[0] != kFloat32) return fail("seesaw_split", "only float32 inputs are supported");
  (*out)[0] = (*out)[1] = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue shape_split(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in,
                          std::vector<std::vector<unsigned int>>* out) {
  const auto& x = (*in)[0];
  const int64_t k = point_of(attrs);
  if (x.size() < 2 || k >= static_cast<int64_t>(x[1])) return fail("seesaw_split", "point must be in [1, C)");
  (*out)[0] = x;
  (*out)[0][1] = static_cast<unsigned int>(k);
  (*out)[1] = x;
  (*out)[1][1] = x[1] - static_cast<unsigned int>(k);
  return MX_SUCCESS;
}

// Copies each image's first k channels to/from a and the rest to/from b (contiguous runs).
template <bool kForward>
void split_planes(float* x, float* a, float* b, int64_t n, int64_t c, int64_t k, int64_t s) {
#pragma omp parallel for schedule(static)
  for (int64_t img = 0; img < n; ++img) {
    float* xi = x + img * c * s;
    float* ai = a + img * k * s;
    float* bi = b + img * (c - k) * s;
    if (kForward) {
      std::copy(xi, xi + k * s, ai);
      std::copy(xi + k * s, xi + c * s, bi);
    } else {
      std::copy(ai, ai + k * s, xi);
      std::copy(bi, bi + (c - k) * s, xi + k * s);
    }
  }
}

MXReturnValue split_forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                            const OpResource&) {
  if (!all_float32(*in)) return fail("seesaw_split", "float32 only");
  const Planes p = planes_of((*in)[0]);
  split_planes<true>((*in)[0].data<float>(), (*out)[0].data<float>(), (*out)[1].data<float>(), p.n, p.c,
                     point_of(attrs), p.s);
  return MX_SUCCESS;
}

// inputs: da, db, x, a, b   outputs: dx
MXReturnValue split_backward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                             const OpResource&) {
  const Planes p = planes_of((*out)[0]);
  split_planes<false>((*out)[0].data<float>(), (*in)[0].data<float>(), (*in)[1].data<float>(), p.n, p.c,
                      point_of(attrs), p.s);
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------------------------- scale + split

MXReturnValue attrs_scale_split(const Attrs& attrs, int* num_in, int* num_out) {
  if (point_of(attrs) < 1) return fail("seesaw_scale_split", "needs point >= 1");
  *num_in = 2;
  *num_out = 2;
  return MX_SUCCESS;
}

MXReturnValue type_scale_split(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  return all_float32_types("seesaw_scale_split", in, out);
}

MXReturnValue shape_scale_split(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in,
                                std::vector<std::vector<unsigned int>>* out) {
  const auto& x = (*in)[0];
  if (const char* error = scale_shape_error(x, (*in)[1])) return fail("seesaw_scale_split", error);
  const int64_t k = point_of(attrs);
  if (k >= static_cast<int64_t>(x[1])) return fail("seesaw_scale_split", "point must be in [1, C)");
  (*out)[0] = x;
  (*out)[0][1] = static_cast<unsigned int>(k);
  (*out)[1] = x;
  (*out)[1][1] = x[1] - static_cast<unsigned int>(k);
  return MX_SUCCESS;
}

// Plane (img, c) of the split pair: channel c < k lives in a (N, k, S), the others in b (N, C - k, S).
inline float* split_plane(float* a, float* b, int64_t img, int64_t c, int64_t channels, int64_t k, int64_t s) {
  return c < k ? a + (img * k + c) * s : b + (img * (channels - k) + c - k) * s;
}

MXReturnValue scale_split_forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                  const OpResource&) {
  if (!all_float32(*in)) return fail("seesaw_scale_split", "float32 only");
  const Planes p = planes_of((*in)[0]);
  const int64_t k = point_of(attrs);
  float* a = (*out)[0].data<float>();
  float* b = (*out)[1].data<float>();
  scale_planes((*in)[0].data<float>(), (*in)[1].data<float>(), p,
               [&](int64_t img, int64_t c) { return split_plane(a, b, img, c, p.c, k, p.s); });
  return MX_SUCCESS;
}

// inputs: da, db, x, w, a, b   outputs: dx, dw
MXReturnValue scale_split_backward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                   const OpResource&) {
  const Planes p = planes_of((*in)[2]);
  const int64_t k = point_of(attrs);
  float* da = (*in)[0].data<float>();
  float* db = (*in)[1].data<float>();
  scale_planes_backward((*in)[2].data<float>(), (*in)[3].data<float>(), p,
                        [&](int64_t img, int64_t c) { return split_plane(da, db, img, c, p.c, k, p.s); },
                        (*out)[0].data<float>(), (*out)[1].data<float>());
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------------------------- batchnorm + swish
//
// inputs:  x (N, C, ...), gamma (C,), beta (C,), running_mean (C,), running_var (C,) [both mutated], is_train (1,)
// outputs: y = swish(gamma * (x - mean) / sqrt(var + eps) + beta), mean (C,), invstd (C,) (saved for backward)
// attrs:   eps, momentum
//
// lib_api gives an operator no training flag (fcomp_t sees attributes, tensors and resources only), so the mode
// arrives as an input: Dropout(ones(1), p=0.5) is exactly 1 in inference and 0 or 2 in training
// (recipes.fused.layers.is_train_flag).
// Training: batch statistics (biased variance, as MXNet's BatchNorm normalises with and stores), running
// statistics updated as MXNet's: running = running * momentum + batch * (1 - momentum). Inference: running
// statistics, nothing updated. Each channel's data (N * H * W floats, <= 800 KB at batch 64 and 56x56) is read
// once from memory and its later passes come from the core's cache.

double attr_double(const Attrs& attrs, const char* key, double fallback) {
  auto it = attrs.find(key);
  return it == attrs.end() ? fallback : std::stod(it->second);
}

MXReturnValue attrs_bn_swish(const Attrs&, int* num_in, int* num_out) {
  *num_in = 6;
  *num_out = 3;
  return MX_SUCCESS;
}

MXReturnValue mutate_bn_swish(const Attrs&, std::vector<int>* input_indices) {
  input_indices->push_back(3);
  input_indices->push_back(4);
  return MX_SUCCESS;
}

MXReturnValue type_bn_swish(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  return all_float32_types("seesaw_bn_swish", in, out);
}

MXReturnValue shape_bn_swish(const Attrs&, std::vector<std::vector<unsigned int>>* in,
                             std::vector<std::vector<unsigned int>>* out) {
  const auto& x = (*in)[0];
  if (x.size() < 2) return fail("seesaw_bn_swish", "x must be (N, C, ...)");
  for (int i = 1; i <= 4; ++i)
    if ((*in)[i].size() != 1 || (*in)[i][0] != x[1])
      return fail("seesaw_bn_swish", "gamma, beta, running_mean and running_var must be (C,)");
  if ((*in)[5].size() != 1 || (*in)[5][0] != 1) return fail("seesaw_bn_swish", "is_train must be (1,)");
  (*out)[0] = x;
  (*out)[1] = (*out)[2] = std::vector<unsigned int>{x[1]};
  return MX_SUCCESS;
}

// One channel of a (N, C, S) tensor: its plane of image 0 and the distance between images' planes.
struct Channel {
  const float* x;
  int64_t stride;
};

// Sum of x over one channel, and sum of (x - shift)^2; per-plane float sums added in double.
void channel_moments(Channel ch, int64_t n, int64_t s, float shift, double* sum, double* sq) {
  double s1 = 0.0, s2 = 0.0;
  for (int64_t img = 0; img < n; ++img) {
    const float* xp = ch.x + img * ch.stride;
    float a1 = 0.0f, a2 = 0.0f;
#pragma omp simd reduction(+ : a1, a2)
    for (int64_t i = 0; i < s; ++i) {
      const float d = xp[i] - shift;
      a1 += xp[i];
      a2 += d * d;
    }
    s1 += a1;
    s2 += a2;
  }
  *sum = s1;
  *sq = s2;
}

struct BnParams {
  const float* gamma;
  const float* beta;
  float* running_mean;
  float* running_var;
};

// Forward of one channel: statistics (batch ones in training, updating the running ones; else the running
// ones), then y = swish(BatchNorm(x)) written to the planes y + img * y_stride. Returns (mean, invstd).
void bn_swish_channel(Channel in, float* y, int64_t y_stride, int64_t n, int64_t s, BnParams bn, int64_t c, bool train,
                      float eps, float momentum, float* mean_out, float* invstd_out) {
  float mean, var;
  if (train) {
    const double count = static_cast<double>(n * s);
    double sum, sq;
    channel_moments(in, n, s, 0.0f, &sum, &sq);
    mean = static_cast<float>(sum / count);
    channel_moments(in, n, s, mean, &sum, &sq);  // two-pass variance: no cancellation (data now in cache)
    var = static_cast<float>(sq / count);
    bn.running_mean[c] = bn.running_mean[c] * momentum + mean * (1.0f - momentum);
    bn.running_var[c] = bn.running_var[c] * momentum + var * (1.0f - momentum);
  } else {
    mean = bn.running_mean[c];
    var = bn.running_var[c];
  }
  const float invstd = 1.0f / std::sqrt(var + eps);
  const float scale = bn.gamma[c] * invstd, shift = bn.beta[c] - mean * scale;
  for (int64_t img = 0; img < n; ++img) {
    const float* xp = in.x + img * in.stride;
    float* yp = y + img * y_stride;
#pragma omp simd
    for (int64_t i = 0; i < s; ++i) {
      const float h = xp[i] * scale + shift;
      yp[i] = h * sigmoidf(h);
    }
  }
  *mean_out = mean;
  *invstd_out = invstd;
}

// Backward of one channel: dx (same layout as x) from dy (planes dy + img * dy_stride), and dgamma, dbeta.
void bn_swish_channel_backward(Channel in, const float* dy, int64_t dy_stride, float* dx, int64_t n, int64_t s,
                               float gamma, float beta, float mu, float is, float* dgamma, float* dbeta) {
  const double count = static_cast<double>(n * s);
  const float scale = gamma * is, shift = beta - mu * scale;
  // pass 1: dh = dL/d(BatchNorm output), its sum (dbeta) and its sum against x - mean
  double sum_dh = 0.0, sum_dh_xc = 0.0;
  for (int64_t img = 0; img < n; ++img) {
    const float* xp = in.x + img * in.stride;
    const float* dyp = dy + img * dy_stride;
    float* dhp = dx + img * in.stride;  // dh is kept in dx (read back from cache by pass 2)
    float a = 0.0f, b = 0.0f;
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < s; ++i) {
      const float h = xp[i] * scale + shift;
      const float sg = sigmoidf(h);
      const float dh = dyp[i] * (sg + h * sg * (1.0f - sg));
      dhp[i] = dh;
      a += dh;
      b += dh * (xp[i] - mu);
    }
    sum_dh += a;
    sum_dh_xc += b;
  }
  *dbeta = static_cast<float>(sum_dh);
  *dgamma = static_cast<float>(sum_dh_xc * is);
  // pass 2: dx = scale * (dh - mean(dh) - z * mean(dh * z))
  const float k1 = static_cast<float>(-scale * is * is * sum_dh_xc / count);
  const float k0 = static_cast<float>(-scale * sum_dh / count) - mu * k1;
  for (int64_t img = 0; img < n; ++img) {
    const float* xp = in.x + img * in.stride;
    float* dxp = dx + img * in.stride;
#pragma omp simd
    for (int64_t i = 0; i < s; ++i) dxp[i] = dxp[i] * scale + k0 + xp[i] * k1;
  }
}

// Zero the gradients of the inputs that get none (running statistics, is_train); absent indices are skipped.
void zero_outputs(std::vector<MXTensor>* out, std::initializer_list<size_t> which) {
  for (size_t i : which) {
    if (i >= out->size()) continue;
    float* g = (*out)[i].data<float>();
    std::fill(g, g + (*out)[i].size(), 0.0f);
  }
}

MXReturnValue bn_swish_forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                               const OpResource&) {
  if (!all_float32(*in)) return fail("seesaw_bn_swish", "float32 only");
  const Planes p = planes_of((*in)[0]);
  const float* x = (*in)[0].data<float>();
  const BnParams bn{(*in)[1].data<float>(), (*in)[2].data<float>(), (*in)[3].data<float>(), (*in)[4].data<float>()};
  const bool train = (*in)[5].data<float>()[0] != 1.0f;
  float* y = (*out)[0].data<float>();
  float* mean_out = (*out)[1].data<float>();
  float* invstd_out = (*out)[2].data<float>();
  const float eps = static_cast<float>(attr_double(attrs, "eps", 1e-5));
  const float momentum = static_cast<float>(attr_double(attrs, "momentum", 0.9));
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < p.c; ++c)
    bn_swish_channel(Channel{x + c * p.s, p.c * p.s}, y + c * p.s, p.c * p.s, p.n, p.s, bn, c, train, eps, momentum,
                     mean_out + c, invstd_out + c);
  return MX_SUCCESS;
}

// inputs: dy, dmean, dinvstd, x, gamma, beta, running_mean, running_var, is_train, y, mean, invstd
// outputs: dx, dgamma, dbeta, then (if MXNet asks for them) zero gradients of the statistics and the flag.
// The gradients of the mean and invstd outputs are ignored: they are saved state, not results.
// As MXNet's BatchNorm (native and oneDNN, 1.9.1), the backward always takes the statistics as functions of x,
// also after an inference-mode forward (autograd.record(train_mode=False)), where they were the running ones.
MXReturnValue bn_swish_backward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                const OpResource&) {
  const Planes p = planes_of((*in)[3]);
  const float* dy = (*in)[0].data<float>();
  const float* x = (*in)[3].data<float>();
  const float* gamma = (*in)[4].data<float>();
  const float* beta = (*in)[5].data<float>();
  const float* mean = (*in)[10].data<float>();
  const float* invstd = (*in)[11].data<float>();
  float* dx = (*out)[0].data<float>();
  float* dgamma = (*out)[1].data<float>();
  float* dbeta = (*out)[2].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < p.c; ++c)
    bn_swish_channel_backward(Channel{x + c * p.s, p.c * p.s}, dy + c * p.s, p.c * p.s, dx + c * p.s, p.n, p.s,
                              gamma[c], beta[c], mean[c], invstd[c], dgamma + c, dbeta + c);
  zero_outputs(out, {3, 4, 5});
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------------------------- expansion pair
//
// seesaw_bn_swish_concat(a, b, gamma_a, beta_a, running_mean_a, running_var_a,
//                        gamma_b, beta_b, running_mean_b, running_var_b, is_train; groups, eps, momentum)
//   = channel shuffle (groups; 1: none) of concat(seesaw_bn_swish(a, ...a), seesaw_bn_swish(b, ...b)) on axis 1
// outputs: y (N, Ca + Cb, ...), mean_a, invstd_a, mean_b, invstd_b (saved for the backward)
// The two BatchNorm + swish outputs are written straight to their shuffled places: no copy, and nothing but the
// convolution outputs a and b (which the backward needs anyway) is kept for the backward.

MXReturnValue attrs_bn_swish_concat(const Attrs& attrs, int* num_in, int* num_out) {
  if (groups_of(attrs) < 1) return fail("seesaw_bn_swish_concat", "groups must be >= 1");
  *num_in = 11;
  *num_out = 5;
  return MX_SUCCESS;
}

MXReturnValue mutate_bn_swish_concat(const Attrs&, std::vector<int>* input_indices) {
  for (int i : {4, 5, 8, 9}) input_indices->push_back(i);
  return MX_SUCCESS;
}

MXReturnValue type_bn_swish_concat(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  return all_float32_types("seesaw_bn_swish_concat", in, out);
}

MXReturnValue shape_bn_swish_concat(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in,
                                    std::vector<std::vector<unsigned int>>* out) {
  const auto& a = (*in)[0];
  const auto& b = (*in)[1];
  if (const char* error = concat_shape_error(a, b, groups_of(attrs))) return fail("seesaw_bn_swish_concat", error);
  for (int i = 2; i <= 9; ++i) {
    const unsigned int c = i < 6 ? a[1] : b[1];
    if ((*in)[i].size() != 1 || (*in)[i][0] != c)
      return fail("seesaw_bn_swish_concat", "each side's gamma, beta, running_mean and running_var must be (C,)");
  }
  if ((*in)[10].size() != 1 || (*in)[10][0] != 1) return fail("seesaw_bn_swish_concat", "is_train must be (1,)");
  (*out)[0] = a;
  (*out)[0][1] = a[1] + b[1];
  (*out)[1] = (*out)[2] = std::vector<unsigned int>{a[1]};
  (*out)[3] = (*out)[4] = std::vector<unsigned int>{b[1]};
  return MX_SUCCESS;
}

// Output channel k of the shuffled concat: side (0: a, 1: b) and channel within it.
inline void concat_source(int64_t k, int64_t ca, int64_t c, int groups, int* side, int64_t* ch) {
  const int64_t src = (k % groups) * (c / groups) + k / groups;
  *side = src < ca ? 0 : 1;
  *ch = src < ca ? src : src - ca;
}

MXReturnValue bn_swish_concat_forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                      const OpResource&) {
  if (!all_float32(*in)) return fail("seesaw_bn_swish_concat", "float32 only");
  const Planes pa = planes_of((*in)[0]), pb = planes_of((*in)[1]);
  const int64_t c = pa.c + pb.c, cs[2] = {pa.c, pb.c};
  const int groups = groups_of(attrs);
  const float* x[2] = {(*in)[0].data<float>(), (*in)[1].data<float>()};
  BnParams bn[2];
  for (int side = 0; side < 2; ++side)
    bn[side] = BnParams{(*in)[2 + 4 * side].data<float>(), (*in)[3 + 4 * side].data<float>(),
                        (*in)[4 + 4 * side].data<float>(), (*in)[5 + 4 * side].data<float>()};
  const bool train = (*in)[10].data<float>()[0] != 1.0f;
  float* y = (*out)[0].data<float>();
  float* mean[2] = {(*out)[1].data<float>(), (*out)[3].data<float>()};
  float* invstd[2] = {(*out)[2].data<float>(), (*out)[4].data<float>()};
  const float eps = static_cast<float>(attr_double(attrs, "eps", 1e-5));
  const float momentum = static_cast<float>(attr_double(attrs, "momentum", 0.9));
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < c; ++k) {
    int side;
    int64_t ch;
    concat_source(k, pa.c, c, groups, &side, &ch);
    bn_swish_channel(Channel{x[side] + ch * pa.s, cs[side] * pa.s}, y + k * pa.s, c * pa.s, pa.n, pa.s, bn[side], ch,
                     train, eps, momentum, mean[side] + ch, invstd[side] + ch);
  }
  return MX_SUCCESS;
}

// inputs: dy, dmean_a, dinvstd_a, dmean_b, dinvstd_b, then the 11 forward inputs, then the 5 forward outputs
// outputs: da, db, dgamma_a, dbeta_a, [zeros for running_mean_a, running_var_a], dgamma_b, dbeta_b, [zeros...]
MXReturnValue bn_swish_concat_backward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                       const OpResource&) {
  const Planes pa = planes_of((*in)[5]), pb = planes_of((*in)[6]);
  const int64_t c = pa.c + pb.c, cs[2] = {pa.c, pb.c};
  const int groups = groups_of(attrs);
  const float* dy = (*in)[0].data<float>();
  const float* x[2] = {(*in)[5].data<float>(), (*in)[6].data<float>()};
  const float* gamma[2] = {(*in)[7].data<float>(), (*in)[11].data<float>()};
  const float* beta[2] = {(*in)[8].data<float>(), (*in)[12].data<float>()};
  const float* mean[2] = {(*in)[17].data<float>(), (*in)[19].data<float>()};
  const float* invstd[2] = {(*in)[18].data<float>(), (*in)[20].data<float>()};
  float* dx[2] = {(*out)[0].data<float>(), (*out)[1].data<float>()};
  float* dgamma[2] = {(*out)[2].data<float>(), (*out)[6].data<float>()};
  float* dbeta[2] = {(*out)[3].data<float>(), (*out)[7].data<float>()};
#pragma omp parallel for schedule(static)
  for (int64_t k = 0; k < c; ++k) {
    int side;
    int64_t ch;
    concat_source(k, pa.c, c, groups, &side, &ch);
    const int64_t off = ch * pa.s;
    bn_swish_channel_backward(Channel{x[side] + off, cs[side] * pa.s}, dy + k * pa.s, c * pa.s, dx[side] + off, pa.n,
                              pa.s, gamma[side][ch], beta[side][ch], mean[side][ch], invstd[side][ch],
                              dgamma[side] + ch, dbeta[side] + ch);
  }
  zero_outputs(out, {4, 5, 8, 9, 10});
  return MX_SUCCESS;
}

// ------------------------------------------------------------------------------------------- spatial mean

MXReturnValue shape_spatial_mean(const Attrs&, std::vector<std::vector<unsigned int>>* in,
                                 std::vector<std::vector<unsigned int>>* out) {
  const auto& x = (*in)[0];
  if (x.size() < 3) return fail("seesaw_spatial_mean", "x must be (N, C, H, ...)");
  (*out)[0] = x;
  for (size_t i = 2; i < x.size(); ++i) (*out)[0][i] = 1;
  return MX_SUCCESS;
}

MXReturnValue spatial_mean_forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                   const OpResource&) {
  if (!all_float32(*in)) return fail("seesaw_spatial_mean", "float32 only");
  const Planes p = planes_of((*in)[0]);
  const float* x = (*in)[0].data<float>();
  float* y = (*out)[0].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t plane = 0; plane < p.n * p.c; ++plane) {
    const float* xp = x + plane * p.s;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < p.s; ++i) acc += xp[i];
    y[plane] = acc / static_cast<float>(p.s);
  }
  return MX_SUCCESS;
}

// inputs: dy, x, y   outputs: dx
MXReturnValue spatial_mean_backward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                    const OpResource&) {
  const Planes p = planes_of((*in)[1]);
  const float* dy = (*in)[0].data<float>();
  float* dx = (*out)[0].data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t plane = 0; plane < p.n * p.c; ++plane) {
    const float g = dy[plane] / static_cast<float>(p.s);
    float* dxp = dx + plane * p.s;
#pragma omp simd
    for (int64_t i = 0; i < p.s; ++i) dxp[i] = g;
  }
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(seesaw_swish)
    .setParseAttrs(attrs_1in)
    .setInferType(type_float32)
    .setInferShape(shape_same_as_first)
    .setForward(swish_forward, "cpu")
    .setBackward(swish_backward, "cpu");

REGISTER_OP(seesaw_prelu)
    .setParseAttrs(attrs_2in)
    .setInferType(type_float32)
    .setInferShape(shape_prelu)
    .setForward(prelu_forward, "cpu")
    .setBackward(prelu_backward, "cpu");

REGISTER_OP(seesaw_scale)
    .setParseAttrs(attrs_2in)
    .setInferType(type_float32)
    .setInferShape(shape_scale)
    .setForward(scale_forward, "cpu")
    .setBackward(scale_backward, "cpu");

REGISTER_OP(seesaw_concat_shuffle)
    .setParseAttrs(attrs_shuffle)
    .setInferType(type_float32)
    .setInferShape(shape_shuffle)
    .setForward(shuffle_forward, "cpu")
    .setBackward(shuffle_backward, "cpu");

REGISTER_OP(seesaw_split)
    .setParseAttrs(attrs_split)
    .setInferType(type_split)
    .setInferShape(shape_split)
    .setForward(split_forward, "cpu")
    .setBackward(split_backward, "cpu");

REGISTER_OP(seesaw_scale_split)
    .setParseAttrs(attrs_scale_split)
    .setInferType(type_scale_split)
    .setInferShape(shape_scale_split)
    .setForward(scale_split_forward, "cpu")
    .setBackward(scale_split_backward, "cpu");

REGISTER_OP(seesaw_bn_swish)
    .setParseAttrs(attrs_bn_swish)
    .setMutateInputs(mutate_bn_swish)
    .setInferType(type_bn_swish)
    .setInferShape(shape_bn_swish)
    .setForward(bn_swish_forward, "cpu")
    .setBackward(bn_swish_backward, "cpu");

REGISTER_OP(seesaw_bn_swish_concat)
    .setParseAttrs(attrs_bn_swish_concat)
    .setMutateInputs(mutate_bn_swish_concat)
    .setInferType(type_bn_swish_concat)
    .setInferShape(shape_bn_swish_concat)
    .setForward(bn_swish_concat_forward, "cpu")
    .setBackward(bn_swish_concat_backward, "cpu");

REGISTER_OP(seesaw_spatial_mean)
    .setParseAttrs(attrs_1in)
    .setInferType(type_float32)
    .setInferShape(shape_spatial_mean)
    .setForward(spatial_mean_forward, "cpu")
    .setBackward(spatial_mean_backward, "cpu");

MXReturnValue initialize(int version) {
  if (version >= 10900) return MX_SUCCESS;
  MX_ERROR_MSG << "seesaw ops need MXNet >= 1.9.0, found " << version;
  return MX_FAIL;
}
